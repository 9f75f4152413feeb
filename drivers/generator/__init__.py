"""The generator: one driver kind whose readings come from a source chosen in config.

`gpio_source` reads a bare genset through contacts and an ADC fuel sender.
"""

from drivers.generator.gpio_source import GeneratorConfig, GeneratorDriver

__all__ = ["GeneratorConfig", "GeneratorDriver"]
