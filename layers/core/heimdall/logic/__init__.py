"""Use cases: what the Lambdas do, with their collaborators passed in (no boto3 here)."""
