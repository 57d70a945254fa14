"""Forms for the pages; their limits are the protocol's."""
from django import forms
from django.contrib.auth.forms import UserCreationForm

from .catalog import model_choices
from .models import ROOM_NAME_MAX_LENGTH, SYSTEM_PROMPT_MAX_LENGTH
from .protocol import USERNAME_MAX_LENGTH


class SignupForm(UserCreationForm):
    """Django's own sign-up form: a username and a password typed twice, checked by the validators."""


class RoomMemberForm(forms.Form):
    username = forms.CharField(max_length=USERNAME_MAX_LENGTH, strip=True, label="Username")


class RoomPinForm(forms.Form):
    pinned = forms.BooleanField(required=False)  # "true" or "false"


class RoomArchiveForm(forms.Form):
    archived = forms.BooleanField(required=False)  # "true" or "false"


class RoomNameForm(forms.Form):
    name = forms.CharField(max_length=ROOM_NAME_MAX_LENGTH, strip=True, label="Room name")


class RoomCreateForm(forms.Form):
    # Left empty, the room is called DEFAULT_ROOM_NAME until its first exchange gives it a title.
    name = forms.CharField(max_length=ROOM_NAME_MAX_LENGTH, strip=True, required=False, label="Room name")


class RoomConfigureForm(forms.Form):
    model = forms.ChoiceField(label="Model")
    system_prompt = forms.CharField(max_length=SYSTEM_PROMPT_MAX_LENGTH, required=False, strip=False,
                                    widget=forms.Textarea(attrs={"rows": 4}), label="System prompt")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self.fields["model"].choices = [(choice["id"], choice["label"]) for choice in model_choices()]
