"""What crosses the line between the Lambdas and the Batch job: the checkpoint manifest, the job spec
and the job's result. Light on purpose: both sides import it.
"""
