"""Models registered with timm on import: create them with `timm.create_model(name, ...)`."""

from sparsetrain.models import lenet  # noqa: F401  (registers lenet300_100, lenet5)
from sparsetrain.models import lraspp, unet  # noqa: F401  (registers unet*, lraspp_mobilenetv3_*)
