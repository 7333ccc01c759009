"""vcom: virtual serial ports that reach remote serial device servers."""

__version__ = "0.1.0"
