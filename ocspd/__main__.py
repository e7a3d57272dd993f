from ocspd.cli import main

raise SystemExit(main())
