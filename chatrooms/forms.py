"""Forms for the pages."""
from django.contrib.auth.forms import UserCreationForm


class SignupForm(UserCreationForm):
    """Django's own sign-up form: a username and a password typed twice, checked by the validators."""
