"""The OA example system (出差申请 / 采购申请): `python -m examples.oa`."""
