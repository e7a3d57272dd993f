from crlgen.cli import main

raise SystemExit(main())
