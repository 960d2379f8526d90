# Jinja templates of the generated C (a package only so that they ship inside the wheel).
