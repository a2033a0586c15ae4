"""The expense-reimbursement example system (报销单, 预算预占, 核销, 会计档案):
`python -m examples.reimburse`."""
