"""Function-preserving growth operations on (spec, variables, optimizer states) and the policy that
picks them."""
