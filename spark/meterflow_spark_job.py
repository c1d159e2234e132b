"""spark-submit entry point: `spark-submit spark/meterflow_spark_job.py --help`."""

import sys

from meterflow_spark.job import main

sys.exit(main())
