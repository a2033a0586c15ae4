"""`python -m examples.oa`: serves OA on 127.0.0.1:8001 (settings: examples.shared.settings)."""

import uvicorn

from examples.oa.app import create_app
from examples.shared.settings import SystemSettings

settings = SystemSettings.from_env(
    "OA", client_id="oa", port=8001, peer=("http://127.0.0.1:8002", "费用报销 Reimbursement")
)
uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
