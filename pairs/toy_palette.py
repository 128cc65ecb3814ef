"""The colours of the toy set (Fill50K-style circles): what its prompts name, and what the evaluation reads
back from a generated circle."""

COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 20),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "cyan": (40, 200, 220),
    "pink": (240, 130, 180),
}
