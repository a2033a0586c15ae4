"""`python -m examples.reimburse`: serves reimbursement on 127.0.0.1:8002
(settings: examples.shared.settings)."""

import uvicorn

from examples.reimburse.app import create_app
from examples.shared.settings import SystemSettings

settings = SystemSettings.from_env(
    "REIMBURSE", client_id="reimburse", port=8002, peer=("http://127.0.0.1:8001", "OA 办公")
)
uvicorn.run(create_app(settings), host="127.0.0.1", port=settings.port, log_level="warning")
