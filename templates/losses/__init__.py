# Templates (a package only so that they ship inside the wheel).
