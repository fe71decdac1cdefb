from django.conf import settings
from django.contrib import admin
from django.urls import path, re_path
from django.views.static import serve

from djsite import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("upload/", views.upload),
    path("stream/", views.stream),
    path("hello/", views.hello),
    # Static files as a Django app without a front proxy serves them: FileResponse,
    # which goes out through wsgi.file_wrapper.
    re_path(r"^static/(?P<path>.*)$", serve, {"document_root": settings.STATIC_ROOT}),
]
