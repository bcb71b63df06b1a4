"""branchbench: a benchmark suite for methods that learn where a multi-task network branches.

Nothing here touches the network at run time: MLflow's usage telemetry (on by
default in MLflow 3) is switched off unless the user set it explicitly.
"""

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

__version__ = "0.1.0"
