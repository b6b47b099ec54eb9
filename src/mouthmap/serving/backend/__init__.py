"""Triton Python-backend models. The generated ``model.py`` files import these classes, so
the logic lives (and is tested) in the package; they import ``triton_python_backend_utils``,
which exists only inside Triton's Python stub."""
