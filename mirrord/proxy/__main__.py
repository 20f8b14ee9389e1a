import sys

from mirrord.proxy.main import main

sys.exit(main())
