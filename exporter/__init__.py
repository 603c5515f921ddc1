"""caffe-exporter: Prometheus exporter for Caffe training logs."""

__version__ = "0.1.0"
