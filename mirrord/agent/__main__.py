import sys

from mirrord.agent.main import main

sys.exit(main())
