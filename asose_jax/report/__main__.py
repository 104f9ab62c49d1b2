"""`python -m asose_jax.report WORKDIR`: writes WORKDIR/report/report.html and its pictures."""
from asose_jax.report.page import main

main()
