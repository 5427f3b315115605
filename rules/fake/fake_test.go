package fake_test

import (
	"context"
	"errors"
	"testing"

	"github.com/pasvgate/pasvgate/rules"
	"github.com/pasvgate/pasvgate/rules/fake"
	"github.com/pasvgate/pasvgate/rules/rulestest"
)

func TestContract(t *testing.T) {
	rulestest.Run(t, func(*testing.T) rules.Backend { return &fake.Backend{} },
		rulestest.Options{IPv6: true, KeepsCreated: true})
}

func TestRefusesBeforeSetup(t *testing.T) {
	var b fake.Backend
	if err := b.Install(context.Background(), rulestest.Sample("m-1", 40000)); !errors.Is(err, fake.ErrNotSetUp) {
		t.Fatalf("Install before Setup = %v, want ErrNotSetUp", err)
	}
}

func TestInjectedFailure(t *testing.T) {
	var b fake.Backend
	ctx := context.Background()
	if err := b.Setup(ctx); err != nil {
		t.Fatal(err)
	}
	b.FailInstall(func(rules.Mapping) error { return fake.ErrInjected })
	if err := b.Install(ctx, rulestest.Sample("m-1", 40000)); !errors.Is(err, fake.ErrInjected) {
		t.Fatalf("Install = %v, want the injected error", err)
	}
	if b.Len() != 0 {
		t.Fatalf("a failed install left %d mappings", b.Len())
	}
	b.FailInstall(nil)
	m := rulestest.Sample("m-2", 40000)
	if err := b.Install(ctx, m); err != nil {
		t.Fatal(err)
	}
	b.FailRemove(func(rules.Mapping) error { return fake.ErrInjected })
	if err := b.Remove(ctx, m); !errors.Is(err, fake.ErrInjected) || b.Len() != 1 {
		t.Fatalf("Remove = %v with %d left, want the injected error and the mapping kept", err, b.Len())
	}
}
