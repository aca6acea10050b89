"""hddt-bridge: device simulator, edge bridge and HDDT export backend for §374a SGB V."""

__version__ = "0.1.0"
