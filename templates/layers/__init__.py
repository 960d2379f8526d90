# One template per layer kind (a package only so that they ship inside the wheel).
