"""faceagent: face-recognition firmware for edge devices."""

__version__ = "0.1.0"
