import sys

from zeroproof.cli import main

sys.exit(main())
