"""Two small systems that trust idhub, as a company's own would: OA (`examples.oa`) and
expense reimbursement (`examples.reimburse`). `make demo` runs both next to idhub."""
