"""The faust-streaming worker: the routing agent and the timer folding statistics (``streams/app.py``)."""
