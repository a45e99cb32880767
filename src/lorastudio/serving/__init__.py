"""`lorastudio serve`: the HTTP API, the durable job store and the GPU workers.

The API process (app.py, routes/) never imports torch; workers (worker.py) are separate
processes that own the pipelines. They meet only in the job store (store.py) and the
content-addressed files under the data dir (files.py).
"""
