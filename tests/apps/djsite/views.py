import hashlib

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse, StreamingHttpResponse
from django.middleware.csrf import get_token
from django.template import Context, Template


class UploadForm(forms.Form):
    title = forms.CharField(max_length=100)
    upload = forms.FileField()


_PAGE = Template("<form method='post' enctype='multipart/form-data'>{% csrf_token %}{{ form }}</form>")


def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if form.is_valid():
            data = form.cleaned_data["upload"].read()
            return JsonResponse(
                {
                    "title": form.cleaned_data["title"],
                    "name": form.cleaned_data["upload"].name,
                    "size": len(data),
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
        return JsonResponse({"errors": form.errors}, status=400)
    return HttpResponse(_PAGE.render(Context({"form": UploadForm(), "csrf_token": get_token(request)})))


def stream(request: HttpRequest) -> StreamingHttpResponse:
    count = int(request.GET.get("n", "5"))
    return StreamingHttpResponse((b"line %d\n" % i for i in range(count)), content_type="text/plain")


def hello(request: HttpRequest) -> HttpResponse:
    return HttpResponse(b"Hello, world!", content_type="text/plain")
