// The workflow editor (/workflows/new): filled in by the editor's module.
"use strict";
