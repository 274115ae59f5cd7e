"""Training the demo models on data made on the machine (issue 20): so far the data (`shapes.py`)."""
