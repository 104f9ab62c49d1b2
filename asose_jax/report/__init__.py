"""What a run shows: the metrics writer, genotype pictures, and the HTML report
(`python -m asose_jax.report WORKDIR`)."""
