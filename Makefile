# Thin wrapper over meson and the scripts; see README.md.
.PHONY: all deps build image demo test unit e2e bench fuzz clean

all: build

deps:
	bash scripts/deps

build:
	bash scripts/build

image: build

demo: build
	bash scripts/demo

test:
	bash scripts/run-tests

unit:
	meson test -C build --print-errorlogs --suite unit --suite fuzz

e2e:
	BALLAST_IMAGE_DIR=$(CURDIR)/build/guest/image /usr/bin/python3 -m pytest -v tests/e2e

fuzz:
	bash scripts/fuzz

bench:
	bash bench/run

clean:
	rm -rf build build-san build-fuzz
