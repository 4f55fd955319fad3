"""Money reports for operators: settlement (what each machine took, per day and tender) and
reconciliation (every captured provider payment matched to one order; each mismatch listed)."""
