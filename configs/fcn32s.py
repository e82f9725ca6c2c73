"""FCN-32s on the real IRCAD data at paper size (VGG16 widths, 512x512 slices).

Build the data first (see README), then:

  python main.py --config configs/fcn32s.py --workdir runs/fcn32s
"""

from configs import default


def get_config():
    config = default.get_config()
    config.model = 'fcn32s'
    return config
