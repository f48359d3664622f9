"""``python -m heimdall_batch``: the AWS Batch job's entry point."""

import sys

from heimdall_batch.job import main

sys.exit(main())
