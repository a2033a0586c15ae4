"""Two small systems that trust idhub, as a company's own would: OA (`examples.oa`) and
expense reimbursement (`examples.reimburse`). `make demo` runs both next to idhub."""

import warnings

# authlib's httpx integration announces its own future move to httpx2 when imported; not ours.
warnings.filterwarnings("ignore", message="The httpx module is deprecated")
