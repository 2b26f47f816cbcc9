from lamp.cli import main

raise SystemExit(main())
