"""Two small systems that trust idhub, as a company's own would: OA (`examples.oa`) and
expense reimbursement (`examples.reimburse`). `make demo` runs both next to idhub."""

import warnings

# authlib's httpx integration announces its own future move to httpx2 when imported; not ours.
# authlib.deprecate puts an "always" filter for its warnings in front at import, so that module
# is imported first and this filter goes in front of it.
import authlib.deprecate  # noqa: F401

warnings.filterwarnings("ignore", message="The httpx module is deprecated")
