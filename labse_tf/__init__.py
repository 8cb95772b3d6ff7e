"""labse_tf: train, evaluate and ship LaBSE-style multilingual sentence encoders."""

import os

# Quiet TensorFlow's C++ start-up chatter on the command lines (users may override).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
