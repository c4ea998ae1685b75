import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "netuq", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "netuq"))
torch.set_num_threads(min(2, os.cpu_count() or 1))
