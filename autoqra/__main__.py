from autoqra.cli import main

raise SystemExit(main())
