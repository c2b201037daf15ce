"""Models registered with timm on import: create them with `timm.create_model(name, ...)`."""

# Registers lenet300_100, lenet5 (lenet), unet* (unet) and lraspp_mobilenetv3_* (lraspp).
from sparsetrain.models import lenet, lraspp, unet  # noqa: F401

OWN_MODULES = ("lenet", "lraspp", "unet")  # timm's module names of sparsetrain's models: timm.list_models(module=)
SEGMENTATION_MODULES = ("lraspp", "unet")  # those whose models output a mask per pixel
