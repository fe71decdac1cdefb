"""A Flask (WSGI) app for the end-to-end tests: form posts, streaming from a generator."""

from flask import Flask, Response, request

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
