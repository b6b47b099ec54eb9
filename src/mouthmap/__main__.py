from mouthmap.cli import app

app(prog_name="mouthmap")
