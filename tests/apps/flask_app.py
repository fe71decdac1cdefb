"""A Flask (WSGI) app for the end-to-end tests: form posts, streaming from a generator."""

from flask import Flask, Response, request, send_file, stream_with_context

app = Flask(__name__)


@app.get("/")
def index():
    return "Hello from Flask"


@app.post("/form")
def form():
    return {"name": request.form.get("name"), "colors": request.form.getlist("color")}


@app.get("/stream")
def stream():
    def generate():
        for i in range(5):
            yield f"part {i}\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/environ")
def environ():
    env = request.environ
    return {
        "method": env["REQUEST_METHOD"],
        "path": env["PATH_INFO"],
        "script_name": env["SCRIPT_NAME"],
        "query": env["QUERY_STRING"],
        "scheme": env["wsgi.url_scheme"],
        "server_protocol": env["SERVER_PROTOCOL"],
    }


@app.post("/upload-stream")
def upload_stream():
    # Read the (chunked) upload as it arrives, piece by piece.
    import hashlib

    digest = hashlib.sha256()
    size = pieces = 0
    while True:
        piece = request.stream.read(65536)
        if not piece:
            break
        digest.update(piece)
        size += len(piece)
        pieces += 1
    return {"size": size, "sha256": digest.hexdigest(), "pieces": pieces}


@app.post("/echo-stream")
def echo_stream():
    # Both ways at once: each piece of the upload goes back as soon as it is read.
    def generate():
        while True:
            piece = request.stream.read(4096)
            if not piece:
                return
            yield piece.upper()

    return Response(stream_with_context(generate()), mimetype="application/octet-stream")


@app.get("/wait-stream")
def wait_stream():
    # The first part leaves before the generator waits: the client sees it while the
    # app is still producing (no buffering of a streamed response).
    import os
    import time

    flag = request.args["flag"]

    def generate():
        yield "first\n"
        deadline = time.monotonic() + 20
        while not os.path.exists(flag) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "second\n"

    return Response(generate(), mimetype="text/plain")


@app.get("/send-file")
def send_file_route():
    return send_file(request.args["path"], mimetype="application/octet-stream")
