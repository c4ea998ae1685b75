import os

import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "netuq", deadline=None, max_examples=40, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "netuq"))
torch.set_num_threads(1)  # tiny tensors: one thread is fastest, and stable on shared cores
