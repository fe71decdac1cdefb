"""A small Django project served as WSGI in the end-to-end tests (tests/test_e2e_wsgi.py).

The admin (login with CSRF), a form with a file upload, static files served through
``wsgi.file_wrapper``, and a streamed response. The database and the collected static
files live where ``ASGICTL_TEST_DJANGO_DIR`` says (a test's temporary directory).
"""
