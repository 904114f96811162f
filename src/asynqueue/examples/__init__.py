"""
Small example callables shipped with asynqueue, importable after install.

They exist so that the command line and the scripts under ``examples/`` work
right after ``pip install``, and so that process workers can import them by
name::

    asynqueue map asynqueue.examples.demo:collatz 27 97 871

- `asynqueue.examples.demo`: tiny callables for ``asynqueue map``.
- `asynqueue.examples.mandelbrot`: Mandelbrot rows and a standard-library PNG
  writer.
"""
