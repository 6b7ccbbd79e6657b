"""`foodcls serve`: the HTTP API and its page (app.py, page.html); inference stays in predict.py."""
