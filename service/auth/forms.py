"""WTForms for logins and the admin pages (CSRF comes with FlaskForm)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import PasswordField, SelectField, StringField
from wtforms.validators import DataRequired, Length, Regexp

from service.core.schema import ROLE_ADMIN, ROLE_REVIEWER

try:  # WTForms 3.3 deprecates (value, label) tuples in favour of SelectChoice
    from wtforms.fields.choices import SelectChoice
except ImportError:  # pragma: no cover - older WTForms
    SelectChoice = None


def _choices(pairs: list[tuple[str, str]]) -> list:
    return [SelectChoice(v, label) for v, label in pairs] if SelectChoice else pairs

USERNAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"
MIN_PASSWORD = 10


class LoginForm(FlaskForm):
    """Username and password."""

    username = StringField("Username", validators=[DataRequired(), Length(max=100)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


class UserForm(FlaskForm):
    """A new dashboard user."""

    username = StringField(
        "Username",
        validators=[
            DataRequired(),
            Length(min=2, max=100),
            Regexp(USERNAME_PATTERN, message="letters, digits and _ . @ - only"),
        ],
    )
    password = PasswordField("Password", validators=[DataRequired(), Length(min=MIN_PASSWORD, max=1024)])
    role = SelectField("Role", choices=_choices([(ROLE_REVIEWER, "reviewer"), (ROLE_ADMIN, "admin")]), default=ROLE_REVIEWER)


class ApiKeyForm(FlaskForm):
    """A new API key: its name is the client name recorded on submissions."""

    name = StringField(
        "Client name",
        validators=[
            DataRequired(),
            Length(min=2, max=100),
            Regexp(USERNAME_PATTERN, message="letters, digits and _ . @ - only"),
        ],
    )


class ActionForm(FlaskForm):
    """A bare POST (logout, deactivate, revoke) that only carries the CSRF token."""
